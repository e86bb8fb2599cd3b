"""Planning: discovery of plug-ins (registry), the selection grammar, typed jobs validated
before any data is read (plan), the one defaults source, and the contract's properties with
the cheap checks made before training (properties, preflight). Imports no other floor of
the harness.
"""

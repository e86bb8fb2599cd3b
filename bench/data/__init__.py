"""The data layer: file readers, checksummed downloads and the restricted unpickler (files),
the MAF tabular formats (maf, mafgas), image archives (imagedata) and image sets (imageset).
Knows no models and no runs; imports only `bench.api`. Dataset plug-ins use it.
"""

"""temsims: control and data stack of an in-situ correlative TEM-SIMS microscope.

Sub-packages follow the layers of the stack:

``temsims.ioc``
    caproto IOCs simulating the instrument (the hardware side of Channel Access).
``temsims.devices``
    ophyd devices over the IOCs' PVs.
``temsims.plans``
    Bluesky plans.
``temsims.callbacks``, ``temsims.analysis``
    live feedback and analysis of the documents.

Importing any of them does no work: sessions are built by explicit calls.
"""

__version__ = "0.1.0"

"""temsims: control and data stack of an in-situ correlative TEM-SIMS microscope.

Sub-packages follow the layers of the stack, bottom to top:

``temsims.channel_access``, ``temsims.constants``
    the bottom layer: the Channel Access port layout and the instrument's geometry,
    shared by the IOCs and the devices.
``temsims.ioc``
    caproto IOCs simulating the instrument (the hardware side of Channel Access);
    their physics in ``temsims.ioc.physics``.
``temsims.devices``
    ophyd devices over the IOCs' PVs.
``temsims.plans``
    Bluesky plans.
``temsims.callbacks``, ``temsims.catalog``, ``temsims.analysis``
    live feedback, storage and analysis of the documents.
``temsims.app``
    the application: the ``temsims`` command, sessions, the demo and its report, the
    loaders that read experiments back from the catalog.

Importing any of them does no work: sessions are built by explicit calls.
"""

__version__ = "0.1.0"

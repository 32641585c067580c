"""The application on top of the stack: what users run and read.

``temsims.app.cli``
    the ``temsims`` command (``ioc``, ``shell``, ``demo``, ``catalog``).
``temsims.app.session``
    :func:`~temsims.app.session.configure_session`, the beamline-style IPython
    session the profile builds.
``temsims.app.demo``
    the main job: the correlative demo on the embedded catalog, and its report.
``temsims.app.loaders``
    one correlative experiment read back from the catalog, registered, ready to fuse.
``temsims.app.calibration_data``
    an EDX-guided SIMS calibration read back from the catalog, and its quantification.

The bottom layer (``temsims.channel_access``, the CA port layout; ``temsims.constants``,
the instrument's geometry) is below everything, imported by the IOCs and the devices;
nothing here is imported by the layers beneath.
"""

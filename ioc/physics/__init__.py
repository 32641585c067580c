"""The simulated instrument's physics: numpy models and the specimen's ground truth.

No Channel Access here (no caproto import): these are the models the part servers
of :mod:`temsims.ioc` call, and the truth the tests score the analysis against; they
can be used, tested and benchmarked without a server (decision 0018).

Modules
-------
``materials``
    Matrices (stoichiometry, density, sputter yield, ionisation), isotopes and their
    abundances, physical constants.
``specimen``
    The virtual specimen: depth layers of material phases on a nanometre grid, its
    recipes (``build_specimen``) and its ground truth (``Specimen.truth``).
``holder``
    What the holder carries: the specimen, built on first use, and its sputtered
    depth (one per instrument, in the world).
``tem_optics``
    TEM image formation: bright-field mass-thickness and STEM HAADF images, dose,
    Poisson noise.
``edx``
    X-ray spectra of a thin specimen under the electron probe (characteristic lines,
    Bremsstrahlung, detector), Cliff-Lorimer k-factors.
``ion_optics``
    The Ga+ FIB column: beam current per aperture, probe diameter, landing energy,
    source emission.
``sims``
    Secondary-ion formation, sputtering, the sector magnet and its mass calibration,
    collectors and detection, SIMS maps (``FramePlan``), counts and mass scans.
``actuators``
    Time courses of the stage's moves (trapezoidal ``Ramp``) and of the bias
    supply's output (linear ``slew``).
"""

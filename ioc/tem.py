"""Stage IOC (placeholder while the real one is written)."""
from caproto.server import pvproperty

from temsims.ioc.common import InstrumentIOC, run_instrument_ioc


class Stubtem(InstrumentIOC):
    """Stage."""

    x = pvproperty(name="X", value=0.0, record="motor", precision=4)


def main(argv=None):
    run_instrument_ioc(Stubtem, ioc_name="tem", argv=argv)


if __name__ == "__main__":
    main()

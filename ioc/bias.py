"""Stage IOC (placeholder while the real one is written)."""
from caproto.server import pvproperty

from temsims.ioc.common import InstrumentIOC, run_instrument_ioc


class Stubbias(InstrumentIOC):
    """Stage."""

    x = pvproperty(name="X", value=0.0, record="motor", precision=4)


def main(argv=None):
    run_instrument_ioc(Stubbias, ioc_name="bias", argv=argv)


if __name__ == "__main__":
    main()

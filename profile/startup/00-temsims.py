# temsims IPython profile: everything is built by one explicit call.
from temsims.app.session import configure_session

session = configure_session(get_ipython().user_ns)  # noqa: F821 - IPython provides it

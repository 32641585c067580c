"""The queue server worker's start-up module (``start-re-manager --startup-module
temsims.app.queue_startup``; ``temsims queue`` passes it).

Unlike every other module of temsims, importing this one does the work: that is
bluesky-queueserver's contract for a start-up module (the worker imports it in a
fresh process each time the environment opens and takes its globals as the
namespace). Nothing in temsims imports it. What it builds, and from which environment
variables, is :func:`temsims.app.queue_worker.worker_namespace`.
"""

from temsims.app.queue_worker import worker_namespace

globals().update(worker_namespace())

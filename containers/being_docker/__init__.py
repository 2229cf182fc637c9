"""being-docker: the ``docker`` runner and ``being images``, a Being plugin like any other.

Each stage implementation runs in its own image (``being/<slug>:<version>``), built without any image
registry from the pinned lock its package ships (``<package>/image/requirements-<variant>.lock``). Select it
per stage in a config (``runner: docker``, ``runner_options: {cpus, memory, gpu, image, timeout_s}``).
Heavy imports (the docker SDK) happen only when a command or a stage needs them.
"""

from __future__ import annotations

from being_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def being_register_runners(registry):
    from .runner import DockerRunner

    registry.add_runner(DockerRunner)


@hookimpl
def being_register_commands(commands):
    from .commands import ImagesCommand

    commands.add(ImagesCommand())

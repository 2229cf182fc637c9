"""Being on Ray.

* ``runner: ray`` runs a stage request as a Ray task with the resources the stage declares, on whichever node of
  the cluster has them; on the node the stage runs in-process or through another runner (``docker``). The run
  folder is used where it lies when the node sees it (shared storage), else the declared inputs travel with the
  task and the outputs come back (shipped storage).
* ``being batch CLIP... -o DIR`` prepares and trains every clip, one run folder each: one after another here,
  or all at once on a Ray cluster (``--ray``).

Ray is imported only when a stage runs on it or a batch starts.
"""

from being_core import hookimpl


@hookimpl
def being_register_runners(registry):
    from .runner import RayRunner

    registry.add_runner(RayRunner)


@hookimpl
def being_register_commands(commands):
    from .batch import BatchCommand

    commands.add(BatchCommand())

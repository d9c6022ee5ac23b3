"""dreamdist3d.cluster: running recipes on an existing engine (Ray).

Objects (seeds) of a recipe's task (`recipes.objects.ObjectTask`) go to a pool of Ray actors that load the backbone
once and keep it resident; retries, resume by the caller, and results back without a shared filesystem.

- connect.py: join a cluster or start a local one; size the pool from its resources; `ClusterError`
- worker.py: the actor's body (`ObjectWorker`)
- files.py: input files to the workers, run folders back to the driver (atomic writes)
- progress.py: the progress bar over objects
- runner.py: `RayRunner(ClusterConfig(...))`, the scheduling loop

Ray is optional (`pip install 'dreamdist3d[ray]'`): nothing here imports it until a runner connects.
"""

from dreamdist3d.cluster.connect import ClusterError
from dreamdist3d.cluster.runner import ClusterConfig, RayRunner

__all__ = ["ClusterConfig", "ClusterError", "RayRunner"]

"""Multi-task and multi-domain transfer: hard sharing (one trunk, a head per task), soft sharing
(a tower per task tied by an L2 penalty), several domains in one model. A kind of run (``multitask``)
on the one pipeline: ``graft.train`` with ``labels=`` or ``domains=``.

    import graft
    graft.train("utkface/images", "runs/faces", labels="utkface", tasks="age,gender,race", sharing="hard")
    graft.load("runs/faces").predict(["face.jpg"])   # {"tasks": {"age": {"value": ...}, "gender": {...}, ...}}
"""

from graft.multitask.model import MultiTaskModel, build_multitask_model
from graft.multitask.objective import MultiTaskObjective, task_metrics
from graft.multitask.run import MultiTaskTrainedModel

__all__ = ["MultiTaskModel", "MultiTaskObjective", "MultiTaskTrainedModel", "build_multitask_model", "task_metrics"]

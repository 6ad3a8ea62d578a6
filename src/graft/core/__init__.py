"""The modality-free core of transfer learning: one fit loop, objectives, callbacks, a runtime
(where tensors live), checkpoints, and the metrics and plots every kind of run shares.

Nothing here knows about images, text or audio: a model is anything whose ``forward(inputs,
start=k)`` runs from stage ``k`` and whose ``trunks()`` name the parts a freeze plan applies to;
an objective turns outputs and targets into a loss and an epoch's score. Modalities (``graft.image``
today) and kinds of transfer (``graft.multitask``) plug in beside it.
"""

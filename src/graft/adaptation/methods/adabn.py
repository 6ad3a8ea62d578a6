"""AdaBN (Li et al. 2016): no training on the target at all. Each domain is standardised with its own
BatchNorm statistics: the source's rows with statistics re-estimated on the source images, the
target's with statistics re-estimated on the target images, and the saved model carries the target's."""

from graft.adaptation.methods.base import Method

ADABN = Method("adabn", "BatchNorm statistics re-estimated on each domain, no other change", target_bn=True)

"""Transfer across domains: labelled examples from a *source* domain (photos), unlabelled ones from a
*target* domain (paintings) with the same classes, and a classifier that works on the target.

``graft adapt SOURCE TARGET`` is a run kind (:mod:`graft.adaptation.run`) on the shared core: the
frozen prefix is cached for source and target rows alike (:mod:`graft.adaptation.inputs`), each
training batch holds both, and a *method* (:mod:`graft.adaptation.methods`) adds its alignment term to
the source cross-entropy (:mod:`graft.adaptation.objective`). Whether it helped is answered without
target labels (:mod:`graft.adaptation.validators`), which is also how ``--method auto`` chooses
(:mod:`graft.adaptation.auto`).
"""

"""Concept prompts: classes found from text phrases (and example boxes) rather than a trained detector.

``ontology``: ``--prompts`` parsed into classes and phrases. ``exemplars``: ``--exemplars`` read into example
boxes. ``stage``: ``ConceptStage``, the detector stage around a ``pipeline.types.ConceptModel``. ``sam3``:
``Sam3Model``, SAM 3's promptable-concept model (every instance of a noun phrase or of example boxes);
``exemplar``: the example boxes as the model takes them.
"""

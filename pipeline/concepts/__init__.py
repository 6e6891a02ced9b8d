"""Concept prompts: classes found from text phrases (and example boxes) rather than a trained detector.

``ontology``: ``--prompts`` parsed into classes and phrases. ``exemplars``: ``--exemplars`` read into example
boxes. ``stage``: ``ConceptStage``, the detector stage around a ``pipeline.types.ConceptModel`` (SAM 3).
"""

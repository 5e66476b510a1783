"""LLaViLo: video moment retrieval with a frozen LLM and a DETR-style set-prediction head.

Seed paper: Ma et al., 'LLaViLo: Boosting Video Moment Retrieval via Adapter-Based Multimodal
Modeling', ICCV Workshops 2023.

What is here so far: the official QVHighlights evaluation protocol (``qvh_eval``) and the span
utilities of the DETR head -- span formats, temporal (g)IoU, the Hungarian matcher and the
set-prediction losses (``spans``). The model, its config and task hooks come later, so this
package does not register a system yet and importing it loads nothing heavy.
"""

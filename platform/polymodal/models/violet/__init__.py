"""VIOLET: end-to-end video-language transformer (Fu et al., 'VIOLET: End-to-End Video-Language
Transformers with Masked Visual-token Modeling').

Building blocks so far (the task is not registered yet; see the issue note):

* ``swin``: the Video Swin Transformer visual backbone, 3D shifted-window attention over
  T x H x W patches with learnable spatial + temporal position embeddings ``p_v = p_s + p_t``;
* ``masking``: MLM (15%, 80/10/10), blockwise and attended video/text masks, BM+AM per sample;
* ``tokenizer``: the pluggable ``VisualTokenizer`` and its VQ-GAN default (a diffusers ``VQModel``),
  one code per patch position, for masked visual-token modelling;
* ``video``: sparse frame sampling, PyAV decoding, JPEG frame packing for shards;
* ``synth``: moving coloured shapes whose direction only the frame order reveals.
"""

"""The demo's small 3D CNN encoder for CPU-sized volumes (``cnn3d``), a plug-in: not part of the published CT-AGRG.

It exists because CT-Net's 2D ResNet trunk, run on every slice triplet, does not learn the phantom findings in a
few CPU minutes, while this network, at about a tenth of the work per volume, does (docs/demo-encoder.md). At
CT-RATE scale use ``ctnet`` or ``ctvit``.

- :mod:`~ctagrg.extras.cnn3d.config`: ``CNN3DConfig`` (``model.extras.cnn3d``), with one section per stem channel.
- :mod:`~ctagrg.extras.cnn3d.stem`: ``HUBinStem``, the fixed HU-bin statistics per patch.
- :mod:`~ctagrg.extras.cnn3d.channels`: the optional stem channels, one module each (context, blob, sphere, node).
- :mod:`~ctagrg.extras.cnn3d.encoder`: ``CNN3DEncoder``, the stem, three conv stages and region pooling.

The stem needs the full HU range, so pair the encoder with a preprocessing whose window keeps calcium and metal
(``configs/demo/preprocess.yaml``: [-1000, 1500] HU); the visual stages take ``input_hu`` (and ``voxel_mm``) from
the cache's preprocess.json.
"""

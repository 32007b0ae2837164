"""The demo's extras: everything in ctagrg that is not the published CT-AGRG method.

The small CPU encoder (``cnn3d``) and its stem channels, lateral and gated halves, attribute read-outs, nodule
measurement, the out-of-distribution warning, step 2's mirrored pairs. They attach to the core through its
registries (:mod:`ctagrg.utils.plugins`); :func:`register` is the ``ctagrg.plugins`` entry point. docs/demo-encoder.md.
"""

from __future__ import annotations


def register() -> None:
    """Register the extras with the core's registries (called once by ``ctagrg.utils.plugins.load_plugins``)."""
    from ctagrg.extras.halves.heads import HalvesConfig, HalvesHeads, HalvesPretrainHead, check_stage
    from ctagrg.models.registry import HeadVariant, register_encoder, register_heads

    register_heads("halves", HeadVariant(HalvesConfig, HalvesPretrainHead, HalvesHeads, check_stage))
    _register_training()
    _register_inference()
    from ctagrg.extras.cnn3d.config import CNN3DConfig
    from ctagrg.extras.cnn3d.encoder import CNN3DEncoder

    register_encoder("cnn3d", CNN3DConfig, CNN3DEncoder)


def _register_training() -> None:
    from ctagrg.extras.attributes.extension import AttributesExtension
    from ctagrg.extras.halves.thresholds import HalfThresholdsExtension
    from ctagrg.extras.head_l1 import HeadL1Extension
    from ctagrg.extras.mirror.extension import MirrorExtension
    from ctagrg.extras.nodule.calibrate import NoduleSizeExtension
    from ctagrg.extras.ood import OODWarningExtension
    from ctagrg.extras.stem_cache import StemCacheExtension
    from ctagrg.extras.warm_start import HeadsWarmStartExtension
    from ctagrg.training.extensions import register_extension

    for name, cls in (("attributes", AttributesExtension), ("stem_cache", StemCacheExtension),
                      ("head_l1", HeadL1Extension), ("heads_warm_start", HeadsWarmStartExtension),
                      ("half_thresholds", HalfThresholdsExtension), ("nodule_size", NoduleSizeExtension),
                      ("ood_warning", OODWarningExtension), ("mirror", MirrorExtension)):
        register_extension(name, cls)


def _register_inference() -> None:
    from ctagrg.extras.nodule.measure import NoduleSizeConfig
    from ctagrg.extras.nodule.postprocess import NoduleSizePostprocessor
    from ctagrg.extras.ood import OODWarningConfig, OODWarningPostprocessor
    from ctagrg.generation.postprocess import register_postprocessor

    register_postprocessor("nodule_size", NoduleSizeConfig, NoduleSizePostprocessor)
    register_postprocessor("ood_warning", OODWarningConfig, OODWarningPostprocessor)

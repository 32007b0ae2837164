"""Synthetic chest CT phantoms in CT-RATE's layout, with known findings (see docs/phantom.md).

Modules, in the order data flows: ``shapes`` (grid and soft analytic shapes) → ``anatomy`` (normal chest) →
``findings`` (which abnormalities, where) → ``lesions`` (draw them) → ``volume`` (one reconstruction) →
``reports`` (CT-RATE-style text) → ``generate`` (the dataset on disk) → ``preview`` (a montage to check by eye).

Public API: ``ctagrg.phantom.generate.generate_dataset`` and ``PhantomConfig``; ``ctagrg.phantom.volume.make_volume``.
"""

"""The diffusers boundary: :class:`UnifiedScheduler` (a thin driver over a sampler loop), one converter per
diffusers scheduler class, and pipeline loading. Importing this package does not import diffusers; its modules do."""

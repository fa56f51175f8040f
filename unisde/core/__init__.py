"""The mathematics, once: noise schedules (s, σ and their derivatives), the forward/reverse SDE family and the
step kernels every sampler shares."""

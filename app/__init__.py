import os

# PyTorch's OpenMP threads spin while they wait by default. In this service the API, the
# worker, the embedder and a training run share a few cores, and spinning threads starve each
# other (generation measured 20x slower under contention). Set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

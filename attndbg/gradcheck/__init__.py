"""gradcheck: gradients of saved tensors and conformance sweeps of attention functions."""

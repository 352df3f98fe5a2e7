"""qco: quantize, compile, offload. Declarative experiments for diffusers inference."""

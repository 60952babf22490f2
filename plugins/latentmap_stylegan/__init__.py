"""latentmap_stylegan: StyleGAN2 and StyleGAN3 generators in plain PyTorch, loaded safely from NVIDIA's pickles."""

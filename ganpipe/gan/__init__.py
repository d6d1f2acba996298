"""The GAN wing: the generator/discriminator builders (`models/`) and the trainer (`training/`)."""

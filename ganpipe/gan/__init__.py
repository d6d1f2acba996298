"""The GAN wing: the generator/discriminator builders (`models/`), the trainer (`training/`) and a
trained generator as generate loads, checks and samples it (`generator.py`)."""

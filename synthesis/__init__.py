"""Class-conditional synthesis of the sampling scripts: shared flags, the generation loop, annotation files."""

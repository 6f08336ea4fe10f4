"""Infrastructure shared by the entry scripts: distributed bootstrap, seeding, random streams, logging, file I/O."""

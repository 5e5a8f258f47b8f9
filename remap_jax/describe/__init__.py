"""Images to descriptors: the Extractor, its input pipeline and programs, descriptor files, export."""

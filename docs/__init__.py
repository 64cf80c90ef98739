"""The documentation site (MkDocs); ``docs.gen`` regenerates its generated reference tables."""

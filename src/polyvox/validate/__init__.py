"""The validate stage: Great Expectations over the raw manifest and audio probes, quarantine."""

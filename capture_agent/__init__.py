"""Node agent: BPF capture, ring-buffer drain, enrichment, OTLP receiver, the record loop."""

"""LoCoMo-style evaluation: loaders, official metrics, an optional LLM judge, the targets that
are compared (the service, full-context and RAG baselines), the harness and its report."""

"""review-stack's common library: the one place services share code, so none imports another's internals.

What it holds, and nothing else:
- the formats that cross services, each with one owner: the reviewer prompt (`prompt`), the review's text
  format and aspects (`review_format`, `aspects`, `response_fit`), a review record's form
  (`review_record`), a paper's text (`papers`, `sentences`), the training run spec (`runspec`), a
  dataset's manifest (`datasets`), a shipped adapter's card (`adapter_card`), TGI's generation
  parameters (`generation_params`), the reference every artifact carries (`artifacts`);
- the plumbing every process shares: the artifact store (`store`), settings, logging, errors a user can
  act on, the gRPC server and client bootstrap (`grpc`), progress display;
- what every machine may load without a model hub: the embedded base model, tokenizers, the sentence
  embedder, the LLM endpoints an operator configured;
- the `reviewstack` command itself (`cli`), which each installed package extends with its verbs.
"""

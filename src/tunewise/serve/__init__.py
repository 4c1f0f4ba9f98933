"""`tunewise serve`: an OpenAI-compatible API over the local model and its fine-tuned adapters.

- `app.create_app(project, ...)`: the FastAPI application (chat completions, models, files, fine-tuning jobs).
- `inference`: the model pool (one base, adapters switched per request) and the chat-completions logic.
- `batcher`: the dynamic batcher (a bounded queue drained by one worker thread that decodes batches).
- `auth`: hashed API keys; `errors`: OpenAI's error shape; `cli`: `tunewise serve` and `tunewise keys`.
"""

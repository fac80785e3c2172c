"""FastAPI app factory, OpenAI-compatible routes, feedback, auth, generator and pages."""

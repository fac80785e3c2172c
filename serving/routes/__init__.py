"""The API's routes, an `APIRouter` per concern; `serving.app.create_app` includes them all."""

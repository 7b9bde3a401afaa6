"""The API's own description: `/openapi.json` and the `/docs` page made from it."""

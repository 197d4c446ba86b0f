from fastapi import APIRouter

from backend.api.routes import datasets, jobs, models, results

api_router = APIRouter()
api_router.include_router(models.router)
api_router.include_router(datasets.router)
api_router.include_router(jobs.router)
api_router.include_router(results.router)

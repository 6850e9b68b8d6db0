"""Stateless FastAPI service over the lake."""

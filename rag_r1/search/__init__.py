"""Retrieval: corpus loading, encoders, dense (FAISS) and BM25 retrievers, the HTTP server and client.

Imports nothing of training code, so the server runs alone on a retrieval machine.
"""

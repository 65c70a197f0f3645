"""Baseline for bench/http_load.py: a minimal FastAPI endpoint that only runs the model.

No validation beyond JSON parsing, no batching, no receipts: the floor of what
an HTTP inference endpoint for ``digits_cnn`` costs on this machine.
Run: ``uvicorn --factory bench.minimal_app:create_app``.
"""


import json


def create_app(model_name: str = "digits_cnn"):
    import numpy as np
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    from models import load_torch_model

    torch.set_num_threads(1)  # as the server does on CPU
    net = load_torch_model(model_name)
    app = FastAPI()

    @app.post(f"/v2/models/{model_name}/infer")
    async def infer(request: Request) -> Response:
        req = json.loads(await request.body())
        inp = req["inputs"][0]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        with torch.inference_mode():
            logits, label = net(torch.from_numpy(x))
        out = {
            "model_name": model_name,
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.ravel().tolist()},
                {"name": "label", "datatype": "INT64", "shape": list(label.shape), "data": label.tolist()},
            ],
        }
        return Response(json.dumps(out).encode(), media_type="application/json")

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    return app

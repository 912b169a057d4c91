"""A client written from the original gyoza.client documentation (seeds/000), stdlib only.

Method names, paths, HTTP methods and payloads follow the documented GyozaClient; errors
raise HTTPStatusError on non-2xx answers, as httpx's raise_for_status() did.
"""

import json
import urllib.error
import urllib.parse
import urllib.request


class HTTPStatusError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status_code = status
        self.body = body


class GyozaClient:
    def __init__(self, base_url, api_key=None, timeout=30.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _request(self, method, path, json_body=None, params=None):
        url = self.base_url + path
        if params:
            params = {k: v for k, v in params.items() if v is not None}
            if params:
                url += "?" + urllib.parse.urlencode(params)
        data = None
        headers = {"X-API-Key": self.api_key or ""}
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise HTTPStatusError(e.code, json.loads(e.read() or b"null")) from None

    def upsert_definition(self, op_dict):
        return self._request("POST", "/definitions", op_dict)

    def get_definition(self, name, version=None):
        return self._request("GET", f"/definitions/{name}", params={"version": version})

    def list_definitions(self):
        return self._request("GET", "/definitions")

    def create_run(self, image, inputs, *, priority=5, constraints=None, retry_policy=None, event_delivery=None):
        body = {"image": image, "inputs": inputs, "priority": priority}
        if constraints is not None:
            body["constraints"] = constraints
        if retry_policy is not None:
            body["retry_policy"] = retry_policy
        if event_delivery is not None:
            body["event_delivery"] = event_delivery
        return self._request("POST", "/runs", body)

    def create_run_from_definition(self, name, inputs, *, version=None, priority=5):
        return self._request(
            "POST", f"/definitions/{name}/runs", {"inputs": inputs, "priority": priority}, params={"version": version}
        )

    def get_run(self, run_id):
        return self._request("GET", f"/runs/{run_id}")

    def update_run(self, run_id, *, state=None, outputs=None, priority=None):
        body = {k: v for k, v in {"state": state, "outputs": outputs, "priority": priority}.items() if v is not None}
        return self._request("PATCH", f"/runs/{run_id}", body)

    def retry_run(self, run_id):
        return self._request("POST", f"/runs/{run_id}/retry")

    def add_event(self, run_id, event_type, msg, payload=None):
        return self._request("POST", f"/runs/{run_id}/events", {"type": event_type, "msg": msg, "payload": payload})

    def poll_events(self, run_id, after=None):
        return self._request("GET", f"/runs/{run_id}/events", params={"after": after})

    def get_attempts(self, run_id):
        return self._request("GET", f"/runs/{run_id}/attempts")

    def list_workers(self):
        return self._request("GET", "/workers")

    def heartbeat(self, worker_id, resources, tags=None, running_ops=None):
        return self._request(
            "POST",
            "/workers/heartbeat",
            {"worker_id": worker_id, "resources": resources, "tags": tags or [], "running_ops": running_ops},
        )

    def claim_ops(self, worker_id):
        return self._request("POST", f"/workers/{worker_id}/claim")["ops"]

    def close(self):
        pass

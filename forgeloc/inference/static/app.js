// forgeloc web page: upload a photo, show the heatmap over it. No libraries, works offline.
"use strict";

(function () {
  var $ = function (id) { return document.getElementById(id); };
  var dropZone = $("drop-zone"), fileInput = $("file-input"), statusEl = $("status"), errorEl = $("error");
  var resultEl = $("result"), opacity = $("opacity"), layer = $("overlay-layer");
  var busy = false;

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = false;
    statusEl.textContent = "";
  }

  function clearError() {
    errorEl.textContent = "";
    errorEl.hidden = true;
  }

  function applyOpacity() {
    layer.style.opacity = String(Number(opacity.value) / 100);
    $("opacity-value").textContent = opacity.value + " %";
  }

  function percent(x) {
    var p = 100 * x;
    return (p > 0 && p < 0.01 ? "<0.01" : p.toFixed(2)) + " %";
  }

  function show(result) {
    $("result-name").textContent = result.name;
    $("score").textContent = result.score.toFixed(3);
    $("fraction").textContent = percent(result.tampered_fraction);
    $("size").textContent = result.width + " × " + result.height;
    $("mode-used").textContent = result.mode + (result.windows > 1 ? " (" + result.windows + " windows)" : "");
    $("overlay-photo").src = result.images.photo;
    layer.src = result.images.layer;
    $("heatmap").src = result.images.heatmap;
    var mask = $("download-mask"), heat = $("download-heatmap");
    mask.href = result.images.mask;
    mask.download = result.stem + "_mask.png";
    heat.href = result.images.heatmap;
    heat.download = result.stem + "_heatmap.png";
    applyOpacity();
    resultEl.hidden = false;
    statusEl.textContent = "Analysed " + result.name + " in " + result.elapsed_s.toFixed(1) + " s (threshold " +
      result.threshold + ").";
  }

  function upload(file) {
    if (!file || busy) { return; }
    busy = true;
    clearError();
    statusEl.textContent = "Analysing " + file.name + " …";
    var params = new URLSearchParams({ mode: $("mode").value });
    var thr = $("threshold").value.trim();
    if (thr !== "") { params.set("threshold", thr); }
    fetch("/api/predict?" + params.toString(), {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
      body: file
    }).then(function (response) {
      return response.json().catch(function () { return { detail: "HTTP " + response.status }; })
        .then(function (body) {
          if (!response.ok) {
            var detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
            throw new Error(detail || ("HTTP " + response.status));
          }
          return body;
        });
    }).then(show).catch(function (err) {
      resultEl.hidden = true;
      showError(err.message || String(err));
    }).finally(function () {
      busy = false;
      fileInput.value = "";
    });
  }

  fileInput.addEventListener("change", function () { upload(fileInput.files[0]); });
  opacity.addEventListener("input", applyOpacity);
  ["dragenter", "dragover"].forEach(function (type) {
    dropZone.addEventListener(type, function (e) { e.preventDefault(); dropZone.classList.add("dragging"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    dropZone.addEventListener(type, function (e) { e.preventDefault(); dropZone.classList.remove("dragging"); });
  });
  dropZone.addEventListener("drop", function (e) {
    var files = e.dataTransfer && e.dataTransfer.files;
    if (files && files.length) { upload(files[0]); }
  });
  dropZone.addEventListener("keydown", function (e) {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
  });
  // Dropping a file elsewhere on the page must not navigate away from it.
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) { e.preventDefault(); });

  fetch("/api/info").then(function (r) { return r.json(); }).then(function (info) {
    var parts = ["model " + info.model];
    if (info.checkpoint) { parts.push("checkpoint " + info.checkpoint); }
    parts.push("input " + info.input_size + " px", "threshold " + info.threshold);
    $("model-info").textContent = parts.join(" · ");
    $("limits").textContent = "Up to " + info.max_upload_mb + " MB and " +
      (info.max_pixels / 1e6).toFixed(0) + " megapixels. Mode auto: " + info.auto_rule + ".";
    $("colour-scale").style.background = "linear-gradient(to right, " + info.colormap_stops.join(", ") + ")";
  }).catch(function () { $("model-info").textContent = "model information unavailable"; });
  applyOpacity();
})();

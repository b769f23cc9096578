# A thin adapter for node-gyp users (prebuildify, node-gyp-build's install
# fallback): the real build is CMakeLists.txt, driven by cmake-js, and this
# target only runs it and copies the addon where node-gyp expects it.
{
  "targets": [
    {
      "target_name": "moba_cuda",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake_js_build",
          "inputs": ["CMakeLists.txt"],
          "outputs": ["<(PRODUCT_DIR)/moba_cuda.node"],
          "action": ["node", "scripts/build-native.js", "--out", "<(PRODUCT_DIR)/cmake", "--copy-to", "<(PRODUCT_DIR)"]
        }
      ]
    }
  ]
}

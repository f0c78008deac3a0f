"""CPU inference runtimes for the student beside torch: what the CPU can do, the network
exported once as an ONNX graph, OpenVINO and ONNX Runtime sessions on it, and int8
quantization of its convolutions calibrated on real imagery.

torch stays the reference path; :class:`backend.inference.SuperResolver` picks one of these
under ``precision='auto'`` only after an accuracy probe against torch fp32.
"""

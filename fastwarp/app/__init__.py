"""The registration application, built on fastwarp's op layer.
"""

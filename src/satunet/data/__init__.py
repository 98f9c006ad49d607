"""Datasets (official LoveDA / LandCover.ai layouts, user folders), transforms, download."""

"""Build actlab's built-in fact / hallucination pairs (src/actlab/data/contrast/*.json).

Four domains in the seed's format (JSON arrays of {id, domain, complexity,
prompt, fact, hallucination}, one file per domain). Every fact is a
well-established one, written out below by hand. For each fact the
hallucination is the first of its plausible wrong candidates whose token
count after the prompt equals the fact's under the default tokenizer, so
length cannot explain a difference; the script reports the pairs where no
candidate matches.

    python tools/build_contrast_pairs.py
"""

import json
import random
from pathlib import Path

from transformers import AutoTokenizer

from actlab.default_model import default_model_dir

OUT = Path(__file__).resolve().parent.parent / "src" / "actlab" / "data" / "contrast"

CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
            "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens",
            "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
            "Ireland": "Dublin", "Austria": "Vienna", "Hungary": "Budapest", "Poland": "Warsaw", "Peru": "Lima",
            "Argentina": "Buenos Aires", "Chile": "Santiago", "Kenya": "Nairobi", "Thailand": "Bangkok",
            "South Korea": "Seoul", "Iran": "Tehran", "Iraq": "Baghdad", "Cuba": "Havana", "Belgium": "Brussels",
            "the Netherlands": "Amsterdam", "the Czech Republic": "Prague", "Romania": "Bucharest",
            "Ukraine": "Kyiv", "Mexico": "Mexico City", "Indonesia": "Jakarta", "the Philippines": "Manila",
            "Ethiopia": "Addis Ababa", "Colombia": "Bogotá", "Venezuela": "Caracas", "Iceland": "Reykjavik",
            "Saudi Arabia": "Riyadh"}
AUTHORS = {"Pride and Prejudice": "Jane Austen", "Hamlet": "William Shakespeare", "Moby-Dick": "Herman Melville",
           "War and Peace": "Leo Tolstoy", "Don Quixote": "Miguel de Cervantes", "1984": "George Orwell",
           "The Odyssey": "Homer", "Crime and Punishment": "Fyodor Dostoevsky", "Ulysses": "James Joyce",
           "The Great Gatsby": "F. Scott Fitzgerald", "Frankenstein": "Mary Shelley", "Dracula": "Bram Stoker",
           "Oliver Twist": "Charles Dickens", "The Divine Comedy": "Dante Alighieri", "Faust": "Goethe",
           "Les Misérables": "Victor Hugo", "Jane Eyre": "Charlotte Brontë", "Wuthering Heights": "Emily Brontë",
           "The Old Man and the Sea": "Ernest Hemingway", "One Hundred Years of Solitude": "Gabriel García Márquez"}
SYMBOLS = {"gold": "Au", "silver": "Ag", "iron": "Fe", "sodium": "Na", "potassium": "K", "lead": "Pb",
           "copper": "Cu", "tin": "Sn", "mercury": "Hg", "oxygen": "O", "carbon": "C", "hydrogen": "H",
           "helium": "He", "nitrogen": "N", "calcium": "Ca", "zinc": "Zn", "chlorine": "Cl", "sulfur": "S",
           "uranium": "U", "tungsten": "W"}
CONTINENTS = {"Kenya": "Africa", "Nigeria": "Africa", "Egypt": "Africa", "Peru": "South America",
              "Chile": "South America", "Colombia": "South America", "Thailand": "Asia", "Vietnam": "Asia",
              "Mongolia": "Asia", "Norway": "Europe", "Hungary": "Europe", "Portugal": "Europe",
              "Canada": "North America", "Guatemala": "North America", "Nepal": "Asia"}
LANGUAGES = {"Brazil": "Portuguese", "Mexico": "Spanish", "Austria": "German", "Egypt": "Arabic", "Japan": "Japanese",
             "Argentina": "Spanish", "Iran": "Persian", "the Netherlands": "Dutch", "Poland": "Polish",
             "Greece": "Greek", "Turkey": "Turkish", "Sweden": "Swedish", "Portugal": "Portuguese",
             "Finland": "Finnish", "Hungary": "Hungarian"}
PAINTINGS = {"the Mona Lisa": "Leonardo da Vinci", "The Starry Night": "Vincent van Gogh",
             "The Persistence of Memory": "Salvador Dalí", "Guernica": "Pablo Picasso",
             "The Birth of Venus": "Sandro Botticelli", "The Night Watch": "Rembrandt",
             "Girl with a Pearl Earring": "Johannes Vermeer", "The Scream": "Edvard Munch",
             "Water Lilies": "Claude Monet", "The Last Supper": "Leonardo da Vinci"}

EVENTS = [("The Berlin Wall fell in", 1989), ("Neil Armstrong first walked on the Moon in", 1969),
          ("The Second World War ended in", 1945), ("The First World War began in", 1914),
          ("The French Revolution began in", 1789), ("The United States Declaration of Independence was signed in", 1776),
          ("Christopher Columbus first reached the Americas in", 1492), ("The Titanic sank in", 1912),
          ("The Soviet Union was dissolved in", 1991), ("The Magna Carta was sealed in", 1215),
          ("The Battle of Hastings was fought in", 1066), ("Albert Einstein published special relativity in", 1905),
          ("Charles Darwin published On the Origin of Species in", 1859),
          ("The Wright brothers made the first powered flight in", 1903),
          ("Japan attacked Pearl Harbor in", 1941), ("The Normandy landings of D-Day took place in", 1944),
          ("The Soviet Union launched Sputnik in", 1957), ("Yuri Gagarin became the first human in space in", 1961),
          ("The Chernobyl disaster happened in", 1986), ("Abraham Lincoln was assassinated in", 1865),
          ("The American Civil War began in", 1861), ("The Battle of Waterloo was fought in", 1815),
          ("William Shakespeare was born in", 1564), ("Wolfgang Amadeus Mozart was born in", 1756),
          ("Ludwig van Beethoven was born in", 1770), ("Isaac Newton published the Principia in", 1687),
          ("Nelson Mandela was released from prison in", 1990), ("Nelson Mandela became president of South Africa in", 1994),
          ("India became independent in", 1947), ("The People's Republic of China was founded in", 1949),
          ("The Korean War began in", 1950), ("The Vietnam War ended in", 1975),
          ("The Cuban Missile Crisis took place in", 1962), ("John F. Kennedy was assassinated in", 1963),
          ("Martin Luther posted his Ninety-five Theses in", 1517), ("Constantinople fell to the Ottomans in", 1453),
          ("The Treaty of Versailles was signed in", 1919), ("The Wall Street stock market crashed in", 1929),
          ("The Panama Canal opened in", 1914), ("The Suez Canal opened in", 1869), ("The Eiffel Tower was completed in", 1889),
          ("The Statue of Liberty was dedicated in", 1886), ("The first modern Olympic Games were held in", 1896),
          ("Alexander Fleming discovered penicillin in", 1928), ("The structure of DNA was described by Watson and Crick in", 1953),
          ("The Hubble Space Telescope was launched in", 1990), ("The United Kingdom voted to leave the European Union in", 2016),
          ("The euro was introduced as an accounting currency in", 1999), ("The first Nobel Prizes were awarded in", 1901),
          ("The Space Shuttle Challenger broke apart in", 1986), ("Wikipedia was launched in", 2001),
          ("Google was founded in", 1998), ("Facebook was founded in", 2004), ("Microsoft was founded in", 1975),
          ("Apple was founded in", 1976), ("Amazon was founded in", 1994), ("YouTube was founded in", 2005),
          ("The Great Fire of London broke out in", 1666), ("The Boston Tea Party took place in", 1773),
          ("The United States Constitution was signed in", 1787), ("The Louisiana Purchase was made in", 1803),
          ("The United States bought Alaska from Russia in", 1867), ("Charles Lindbergh flew solo across the Atlantic in", 1927),
          ("The Russian Revolution took place in", 1917), ("The Spanish Civil War began in", 1936),
          ("NATO was founded in", 1949), ("The United Nations was founded in", 1945),
          ("Hong Kong was handed over to China in", 1997), ("The Channel Tunnel opened in", 1994),
          ("The first Harry Potter book was published in", 1997), ("The first Star Wars film was released in", 1977),
          ("Leonardo da Vinci was born in", 1452), ("Nicolaus Copernicus published his heliocentric theory in", 1543),
          ("Galileo Galilei died in", 1642), ("Queen Elizabeth II was crowned in", 1953),
          ("The Apollo 13 mission launched in", 1970), ("The first iPhone was released in", 2007),
          ("The Berlin Wall was built in", 1961), ("The Bastille was stormed in", 1789),
          ("The first transatlantic telegraph cable was completed in", 1858), ("Queen Victoria died in", 1901),
          ("The Second World War began in", 1939), ("Adolf Hitler came to power in Germany in", 1933),
          ("The Peace of Westphalia was signed in", 1648), ("The Thirty Years' War began in", 1618),
          ("The Hundred Years' War began in", 1337), ("The Black Death reached Europe in", 1347),
          ("Marie Curie won her first Nobel Prize in", 1903), ("The first Tour de France was held in", 1903),
          ("The first FIFA World Cup was held in", 1930), ("The Sydney Opera House opened in", 1973),
          ("The Golden Gate Bridge opened in", 1937), ("The Empire State Building was completed in", 1931),
          ("The Battle of Gettysburg was fought in", 1863), ("The Emancipation Proclamation was issued in", 1863),
          ("The Meiji Restoration began in", 1868), ("The Suez Crisis took place in", 1956),
          ("The Six-Day War took place in", 1967), ("The first website went online in", 1991),
          ("Euro banknotes and coins entered circulation in", 2002), ("Barack Obama was first elected president in", 2008),
          ("The Space Shuttle Columbia disaster happened in", 2003), ("The September 11 attacks took place in", 2001),
          ("The Human Genome Project was declared complete in", 2003), ("The Mayflower reached America in", 1620),
          ("Jamestown, Virginia, was founded in", 1607), ("James Cook reached the east coast of Australia in", 1770)]

COMPARISONS = [  # (subject, (true comparative, false comparative), object) : "subject is <cmp> than object."
    ("The Sun", ("larger", "smaller"), "the Earth"), ("The Earth", ("larger", "smaller"), "the Moon"),
    ("Jupiter", ("larger", "smaller"), "Mars"), ("Russia", ("larger", "smaller"), "France"),
    ("The Pacific Ocean", ("larger", "smaller"), "the Atlantic Ocean"), ("An elephant", ("heavier", "lighter"), "a mouse"),
    ("A blue whale", ("heavier", "lighter"), "a dolphin"), ("A kilogram", ("heavier", "lighter"), "a gram"),
    ("A year", ("longer", "shorter"), "a month"), ("An hour", ("longer", "shorter"), "a minute"),
    ("A week", ("longer", "shorter"), "a day"), ("A century", ("longer", "shorter"), "a decade"),
    ("The Nile", ("longer", "shorter"), "the Thames"), ("A kilometre", ("longer", "shorter"), "a metre"),
    ("Light", ("faster", "slower"), "sound"), ("A cheetah", ("faster", "slower"), "a tortoise"),
    ("A jet airliner", ("faster", "slower"), "a bicycle"), ("The surface of the Sun", ("hotter", "colder"), "the surface of the Earth"),
    ("Boiling water", ("hotter", "colder"), "ice"), ("Venus", ("hotter", "colder"), "Mars"),
    ("The Antarctic winter", ("colder", "hotter"), "the Sahara summer"), ("Mount Everest", ("higher", "lower"), "Mont Blanc"),
    ("The Eiffel Tower", ("taller", "shorter"), "a house"), ("A giraffe", ("taller", "shorter"), "a cat"),
    ("The Great Pyramid of Giza", ("older", "younger"), "the Eiffel Tower"), ("The Roman Empire", ("older", "younger"), "the United States"),
    ("A grandparent", ("older", "younger"), "a grandchild"), ("Diamond", ("harder", "softer"), "talc"),
    ("Steel", ("harder", "softer"), "butter"), ("Lead", ("denser", "lighter"), "wood"),
    ("Gold", ("denser", "lighter"), "aluminium"), ("A marathon", ("longer", "shorter"), "a sprint"),
    ("The Amazon rainforest", ("wetter", "drier"), "the Atacama Desert"), ("Tokyo", ("larger", "smaller"), "Reykjavik"),
    ("Canada", ("larger", "smaller"), "Belgium"), ("Brazil", ("larger", "smaller"), "Portugal"),
    ("A sumo wrestler", ("heavier", "lighter"), "a jockey"), ("A truck", ("heavier", "lighter"), "a bicycle"),
    ("Saturn", ("larger", "smaller"), "Mercury"), ("An ostrich", ("larger", "smaller"), "a sparrow"),
]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
ORDER = [  # (earlier, later): "X came before Y."
    ("The First World War", "the Second World War"), ("The Middle Ages", "the Renaissance"),
    ("The Stone Age", "the Bronze Age"), ("The Bronze Age", "the Iron Age"), ("The invention of writing", "the printing press"),
    ("The steam engine", "the jet engine"), ("The telegraph", "the internet"), ("The Roman Republic", "the Roman Empire"),
    ("The dinosaurs", "the first humans"), ("Monday", "Tuesday"), ("January", "February"), ("Spring", "summer"),
    ("Childhood", "old age"), ("Sunrise", "sunset"), ("The American Revolution", "the American Civil War"),
    ("The French Revolution", "the Russian Revolution"), ("The Moon landing", "the fall of the Berlin Wall"),
    ("The telephone", "the smartphone"), ("The horse-drawn carriage", "the automobile"), ("Black-and-white television", "colour television"),
]
GEO = [  # (a, relation, (true, false), b)
    ("Canada", "lies", ("north", "south"), "of the United States"), ("Mexico", "is", ("south", "north"), "of the United States"),
    ("Japan", "is", ("east", "west"), "of China"), ("Portugal", "is", ("west", "east"), "of Spain"),
    ("Norway", "is", ("north", "south"), "of Italy"), ("Australia", "is", ("south", "north"), "of the equator"),
    ("Egypt", "is", ("north", "south"), "of Kenya"), ("Ireland", "is", ("west", "east"), "of Great Britain"),
    ("Chile", "is", ("west", "east"), "of Argentina"), ("Finland", "is", ("east", "west"), "of Sweden"),
]

TRAPS = [  # (prompt, fact, [plausible wrong answers])
    ("The capital of Australia is", "Canberra.", ["Sydney.", "Melbourne."]),
    ("The capital of Canada is", "Ottawa.", ["Toronto.", "Montreal.", "Vancouver."]),
    ("The capital of Brazil is", "Brasília.", ["Rio de Janeiro.", "São Paulo."]),
    ("The capital of Turkey is", "Ankara.", ["Istanbul."]), ("The capital of Switzerland is", "Bern.", ["Zurich.", "Geneva."]),
    ("The capital of New Zealand is", "Wellington.", ["Auckland."]), ("The capital of Nigeria is", "Abuja.", ["Lagos."]),
    ("The capital of Morocco is", "Rabat.", ["Casablanca.", "Marrakesh."]), ("The capital of Vietnam is", "Hanoi.", ["Ho Chi Minh City.", "Saigon."]),
    ("The capital of Pakistan is", "Islamabad.", ["Karachi.", "Lahore."]), ("The capital of India is", "New Delhi.", ["Mumbai.", "Kolkata."]),
    ("The capital of the United States is", "Washington, D.C.", ["New York City.", "Philadelphia."]),
    ("The capital of Scotland is", "Edinburgh.", ["Glasgow."]), ("The capital of Kazakhstan is", "Astana.", ["Almaty."]),
    ("The capital of Tanzania is", "Dodoma.", ["Dar es Salaam."]), ("The capital of Ecuador is", "Quito.", ["Guayaquil."]),
    ("The capital of Belize is", "Belmopan.", ["Belize City."]), ("The capital of Myanmar is", "Naypyidaw.", ["Yangon.", "Rangoon."]),
    ("The hottest planet in the solar system is", "Venus.", ["Mercury."]),
    ("The planet closest to the Sun is", "Mercury.", ["Venus."]),
    ("The smallest planet in the solar system is", "Mercury.", ["Pluto."]),
    ("The number of planets in the solar system is", "eight.", ["nine."]),
    ("The largest desert on Earth is", "Antarctica.", ["the Sahara.", "the Gobi."]),
    ("The most abundant gas in Earth's atmosphere is", "nitrogen.", ["oxygen.", "carbon dioxide."]),
    ("The longest river in Europe is the", "Volga.", ["Danube.", "Rhine."]),
    ("The first person to reach the South Pole was", "Roald Amundsen.", ["Robert Falcon Scott.", "Ernest Shackleton."]),
    ("The novel Frankenstein was written by", "Mary Shelley.", ["Bram Stoker.", "Percy Shelley."]),
    ("The language with the most native speakers is", "Mandarin Chinese.", ["English.", "Spanish."]),
    ("Botanically, a tomato is a", "fruit.", ["vegetable."]), ("Botanically, a peanut is a", "legume.", ["nut."]),
    ("The largest organ of the human body is the", "skin.", ["liver.", "brain."]),
    ("An adult human skeleton has", "206 bones.", ["212 bones.", "300 bones."]),
    ("The human heart has", "four chambers.", ["two chambers.", "three chambers."]),
    ("The Titanic sank in the", "Atlantic Ocean.", ["Pacific Ocean.", "Arctic Ocean."]),
    ("Albert Einstein won the Nobel Prize in Physics for his explanation of", "the photoelectric effect.", ["the theory of relativity."]),
    ("The Declaration of Independence was signed in", "Philadelphia.", ["Washington.", "Boston."]),
    ("The first President of the United States was", "George Washington.", ["Thomas Jefferson.", "John Adams."]),
    ("Mount Kilimanjaro is in", "Tanzania.", ["Kenya."]), ("The Statue of Liberty was a gift from", "France.", ["England.", "Britain."]),
    ("Most penguins live in the", "Southern Hemisphere.", ["Northern Hemisphere."]),
    ("Polar bears live in the", "Arctic.", ["Antarctic."]), ("Koalas are", "marsupials.", ["bears."]),
    ("Spiders are", "arachnids, not insects.", ["insects, not arachnids."]), ("Whales are", "mammals.", ["fish."]),
    ("Bats are", "mammals.", ["birds."]), ("The currency of the United Kingdom is the", "pound sterling.", ["euro."]),
    ("The currency of Switzerland is the", "Swiss franc.", ["euro."]), ("The currency of Sweden is the", "krona.", ["euro."]),
    ("The currency of Denmark is the", "krone.", ["euro."]), ("The currency of Poland is the", "złoty.", ["euro."]),
    ("The currency of Japan is the", "yen.", ["yuan.", "won."]), ("The currency of China is the", "renminbi.", ["yen.", "won."]),
    ("Greenland is an autonomous territory of", "Denmark.", ["Canada.", "Norway."]),
    ("The Amazon River flows into the", "Atlantic Ocean.", ["Pacific Ocean."]),
    ("Strictly speaking, Big Ben is the name of the", "bell.", ["tower.", "clock."]),
    ("William Shakespeare's birthplace is", "Stratford-upon-Avon.", ["London."]),
    ("The Wright brothers first flew their aeroplane in", "North Carolina.", ["Ohio."]),
    ("The chemical formula of table salt is", "NaCl.", ["KCl."]), ("The element with atomic number 1 is", "hydrogen.", ["helium."]),
    ("The most abundant element in the universe is", "hydrogen.", ["helium.", "oxygen."]),
    ("The only metal that is liquid at room temperature is", "mercury.", ["lead.", "gallium."]),
    ("Water at sea level boils at", "212 degrees Fahrenheit.", ["100 degrees Fahrenheit."]),
    ("The speed of light in a vacuum is about 300,000 kilometres per", "second.", ["hour.", "minute."]),
    ("A year on Mars is", "longer than a year on Earth.", ["shorter than a year on Earth."]),
    ("The Moon's surface gravity is about", "one sixth of Earth's.", ["one half of Earth's."]),
    ("Sound travels faster in", "water than in air.", ["air than in water."]),
    ("The Great Wall of China is", "not visible to the naked eye from the Moon.", ["visible to the naked eye from the Moon."]),
    ("The tallest mountain above sea level is", "Mount Everest.", ["K2.", "Kilimanjaro."]),
    ("The deepest point of the oceans is the", "Mariana Trench.", ["Puerto Rico Trench."]),
    ("The author of The Adventures of Tom Sawyer is", "Mark Twain.", ["Charles Dickens."]),
    ("Napoleon Bonaparte was born on the island of", "Corsica.", ["Sicily.", "Elba."]),
    ("Napoleon Bonaparte died in exile on", "Saint Helena.", ["Elba."]),
    ("The painter who cut off part of his own ear was", "Vincent van Gogh.", ["Pablo Picasso.", "Claude Monet."]),
    ("The inventor usually credited with the telephone is", "Alexander Graham Bell.", ["Thomas Edison."]),
    ("The composer of The Four Seasons is", "Antonio Vivaldi.", ["Johann Sebastian Bach."]),
    ("The largest moon of Saturn is", "Titan.", ["Ganymede.", "Europa."]), ("The largest moon in the solar system is", "Ganymede.", ["Titan."]),
    ("The fastest land animal is the", "cheetah.", ["lion.", "horse."]), ("The largest living animal is the", "blue whale.", ["African elephant."]),
    ("A group of lions is called a", "pride.", ["pack.", "herd."]), ("Glass is", "an amorphous solid.", ["a slow liquid."]),
    ("Lightning", "can strike the same place twice.", ["never strikes the same place twice."]),
    ("Goldfish can remember things for", "months.", ["three seconds."]),
    ("The main ingredient of guacamole is", "avocado.", ["tomato.", "lime."]),
    ("Sushi is defined by its", "vinegared rice.", ["raw fish."]),
]


def n_tokens(tok, prompt: str, continuation: str) -> int:
    return len(tok(prompt + " " + continuation)["input_ids"]) - len(tok(prompt)["input_ids"])


def pick(tok, prompt: str, fact: str, candidates: list[str]) -> tuple[str, bool]:
    length = n_tokens(tok, prompt, fact)
    for candidate in candidates:
        if n_tokens(tok, prompt, candidate) == length and candidate != fact:
            return candidate, True
    return candidates[0], False


def entity_swaps(rng) -> list[tuple]:
    out = []
    for country, city in CAPITALS.items():
        out.append(("capitals", f"The capital of {country} is", f"{city}.",
                    [f"{c}." for c in rng.sample([c for c in CAPITALS.values() if c != city], len(CAPITALS) - 1)]))
    for book, author in AUTHORS.items():
        out.append(("authors", f"{book} was written by", f"{author}.",
                    [f"{a}." for a in rng.sample([a for a in AUTHORS.values() if a != author], len(AUTHORS) - 1)]))
    for element, symbol in SYMBOLS.items():
        out.append(("chemistry", f"The chemical symbol for {element} is", f"{symbol}.",
                    [f"{s}." for s in rng.sample([s for s in SYMBOLS.values() if s != symbol], len(SYMBOLS) - 1)]))
    continents = sorted(set(CONTINENTS.values()) | {"Europe", "Oceania"})
    for country, continent in CONTINENTS.items():
        out.append(("continents", f"{country} is a country in", f"{continent}.",
                    [f"{c}." for c in rng.sample([c for c in continents if c != continent], len(continents) - 1)]))
    languages = sorted(set(LANGUAGES.values()))
    for country, language in LANGUAGES.items():
        out.append(("languages", f"The official language of {country} is", f"{language}.",
                    [f"{x}." for x in rng.sample([x for x in languages if x != language], len(languages) - 1)]))
    for painting, painter in PAINTINGS.items():
        others = sorted({p for p in PAINTINGS.values() if p != painter})
        out.append(("art", f"{painting[0].upper() + painting[1:]} was painted by", f"{painter}.",
                    [f"{p}." for p in rng.sample(others, len(others))]))
    return out


def temporal_shifts(rng) -> list[tuple]:
    out = []
    for prompt, year in EVENTS:
        shifts = rng.sample([-12, -10, -7, -5, -4, -3, -2, 2, 3, 4, 5, 7, 10, 12], 14)
        out.append(("dates", prompt, f"{year}.", [f"{year + s}." for s in shifts]))
    return out


def logical_inversions(rng) -> list[tuple]:
    out = [("comparison", f"{a} is", f"{yes} than {b}.", [f"{no} than {b}."]) for a, (yes, no), b in COMPARISONS]
    pairs = [(i, j) for i in range(len(NUMBERS)) for j in range(len(NUMBERS)) if i > j + 1]
    for i, j in rng.sample(pairs, 30):
        out.append(("numbers", f"Compared with {NUMBERS[j]}, the number {NUMBERS[i]} is", "greater.", ["smaller."]))
    out += [("order", f"{a} came", f"before {b}.", [f"after {b}."]) for a, b in ORDER]
    out += [("geography", f"{a} {rel}", f"{yes} {b}.", [f"{no} {b}."]) for a, rel, (yes, no), b in GEO]
    return out


def adversarial_traps(rng) -> list[tuple]:
    return [("traps", prompt, fact, wrong) for prompt, fact, wrong in TRAPS]


def main() -> None:
    tok = AutoTokenizer.from_pretrained(default_model_dir())
    rng = random.Random(0)
    OUT.mkdir(parents=True, exist_ok=True)
    builders = {"entity_swaps": entity_swaps, "temporal_shifts": temporal_shifts,
                "logical_inversions": logical_inversions, "adversarial_traps": adversarial_traps}
    total = unequal = 0
    for domain, build in builders.items():
        records = []
        for k, (sub, prompt, fact, candidates) in enumerate(build(rng)):
            wrong, equal = pick(tok, prompt, fact, candidates)
            unequal += not equal
            records.append({"id": f"{domain}-{k:03d}", "domain": sub, "complexity": "simple" if len(prompt) < 40 else "moderate",
                            "prompt": prompt, "fact": fact, "hallucination": wrong})
        (OUT / f"{domain}.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        total += len(records)
        print(f"{domain}: {len(records)} pairs")
    print(f"{total} pairs; {unequal} with fact and hallucination of unequal token length")


if __name__ == "__main__":
    main()
